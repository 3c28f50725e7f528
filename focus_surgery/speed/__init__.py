"""Speed: the exact forms of a stem, side-by-side timing, optimize(), and the benchmark."""
