"""OpenAI-compatible protocol types shared by the API, the agent and the CPU engine."""
