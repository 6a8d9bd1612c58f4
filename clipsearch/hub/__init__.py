"""The Hub, for both sides: which files of a model repo to fetch and fetch them, and reading the Hub's errors."""
