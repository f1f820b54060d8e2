"""FX passes that recognise NSA compression in user code and rewrite it to nsa_compress."""
