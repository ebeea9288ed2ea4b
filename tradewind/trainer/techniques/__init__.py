"""Training techniques used by the supervised loop: PGD adversarial examples, MAML,
augmentation, and dropout / teacher-forcing schedules."""
