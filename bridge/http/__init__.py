"""HTTP adapter: the small server bridge listens with and the subscriber client."""
