"""trajdistill.skills"""
