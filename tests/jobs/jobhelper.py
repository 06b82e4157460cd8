"""A module next to a job file: the hosts do not have it, so it must travel with the job."""


def shout(text):
    return text.upper() + "!"
