"""Recipes: domain token budgets per stage, resolved into a plan and compiled to Megatron blends."""
