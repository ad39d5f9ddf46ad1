"""specmoe.planner"""
