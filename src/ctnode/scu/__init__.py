"""The outbound side: associations to peers and one module per operation."""
