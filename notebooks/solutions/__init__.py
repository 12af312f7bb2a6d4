"""Reference solutions of the chapters' exercises (tests run every checker against them)."""
