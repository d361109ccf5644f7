"""trajdistill.agents"""
