"""Names the guides use, shared by the scenario modules."""

HOSTNAME = "example.com"
