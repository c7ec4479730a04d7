"""Small runnable demos shared by the README and the tests."""
