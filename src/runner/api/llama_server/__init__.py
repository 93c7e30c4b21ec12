"""llama-server's extra routes: /health, /slots, /tokenize, /detokenize, /metrics."""
