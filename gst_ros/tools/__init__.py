"""Client programs around the nodes, not part of them: `demo` (make demo), `replay` (offline evaluation of
a bag or an image folder), `reliability` (make soak). Run each with `python -m gst_ros.tools.<name>`."""
