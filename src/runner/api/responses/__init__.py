"""OpenAI's Responses API: the routes, the output items and events, the response store."""
