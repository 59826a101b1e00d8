"""gpt1f's benchmark suite: ``python -m benchmarks.run [--quick] [--device cuda] [--compile]``."""
