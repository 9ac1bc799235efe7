"""Training, data preparation and evaluation scripts for GST (run as `python -m training.<script>`)."""
