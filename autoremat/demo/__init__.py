"""The README demo: a small GPT trained a few steps with torch.compile's default and with autoremat."""
