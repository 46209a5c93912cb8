"""Small shared helpers: logging set-up, meters, seeding."""
