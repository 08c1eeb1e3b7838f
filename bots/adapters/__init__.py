"""Channel adapters. Each translates one platform to the core event model and back."""
