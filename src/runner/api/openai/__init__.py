"""OpenAI's API: chat and text completions, embeddings, models, under DMR's prefixes."""
