"""What every layer shares, below the library and the job: atomic writes, checkpoint files, the
distributed helpers the library needs, entry-point errors, logging set-up, meters, seeding."""
