"""The offline index builder: load -> embed -> pack -> index -> evaluate -> publish."""
