"""trajdistill.trajectories"""
