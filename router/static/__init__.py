"""Dashboard assets (HTML, JS, CSS) shipped in the package, served with no external network."""
