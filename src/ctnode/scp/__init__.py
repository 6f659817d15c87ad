"""The inbound side: who may associate, what each message means, the listener."""
