"""The Gradio layer: layout, event handlers, views of hits, and every workaround of Gradio internals."""
