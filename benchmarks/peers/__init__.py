"""Servers we measure our service against. Benchmark code only; never shipped in the Bento."""
