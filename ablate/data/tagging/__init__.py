"""Tagging real corpora into the fine-grained domains (``ablate data tag``).

``base`` defines the interface every tagger implements; ``registry`` names the taggers a corpora
YAML may choose (``tagger: code`` / ``tagger: math``); ``decontam`` finds training documents
that overlap the evaluation sets.
"""
