"""What both sides agree on, no Gradio and no network: manifest, encoder, gallery, queries and the one search."""
