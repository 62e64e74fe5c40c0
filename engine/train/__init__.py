"""Training: starting jobs, the job process, the trainer, checks before launch, estimates."""
