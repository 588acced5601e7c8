"""Diagnostics of the safety mirage: spurious words in a data set, and model-side trigger discovery."""
