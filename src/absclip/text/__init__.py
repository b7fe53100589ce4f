"""The text side: class lists, text files and public sets, text banks, the cached encoder, LLM-written descriptions."""
