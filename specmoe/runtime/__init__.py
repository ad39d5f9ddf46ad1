"""specmoe.runtime"""
