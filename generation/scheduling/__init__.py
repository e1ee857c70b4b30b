"""Which GPU worker runs which queued job: the pure policy (`policy`), its inputs from the
database (`inputs`), a simulator shared by the tests and the bench (`simulation`), and the
dispatcher that applies the plan (`dispatcher`)."""
