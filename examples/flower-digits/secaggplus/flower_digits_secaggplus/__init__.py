"""Flower's SecAgg+ with Krum on the same task: shows Krum silently becoming FedAvg."""
