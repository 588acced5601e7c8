"""The package version (recorded in every manifest); a leaf module, so the lowest modules can read it."""

__version__ = "0.1.0"
