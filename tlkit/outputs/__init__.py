"""What a person reads after a run: metrics, plots and the HTML report."""
