"""Whole flows: jobs, real models, GGUF in llama.cpp, the Hub, tmux, the browser, benches."""
