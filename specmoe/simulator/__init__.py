"""specmoe.simulator"""
