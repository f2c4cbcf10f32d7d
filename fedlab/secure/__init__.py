"""Secure aggregation: encoding, masks, Shamir shares, keys, the protocol (numpy + cryptography only)."""
