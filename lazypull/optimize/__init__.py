"""Optimize an image for its workload: run it once, record the files it reads, prioritize them."""
