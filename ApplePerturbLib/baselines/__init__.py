"""Fairness methods APPLE is compared with: FEBS (a base-model loss) and InD (one model per group)."""
