"""One module per command. Each resolves its options, calls into `stages`, and prints the result."""
