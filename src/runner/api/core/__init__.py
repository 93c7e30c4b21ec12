"""What every dialect shares: inference, SSE, request fields, the chat plan, logprobs, model pulls and imports."""
