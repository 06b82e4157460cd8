"""Imports a module that lives next to this file (not on the hosts, not on sys.path)."""
import jobhelper

input_data = "hello\nworld"


def processor(line):
    return jobhelper.shout(line)
