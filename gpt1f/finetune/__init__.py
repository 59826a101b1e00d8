"""Fine-tuning on every task of the paper: the tasks, their data, and one training loop."""
