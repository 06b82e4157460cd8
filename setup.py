from setuptools import find_packages, setup

setup(
    name="antnest",
    version="0.1.0",
    description="Fan Python work out over plain SSH: hosts need only sshd and python3",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["antnest", "antnest.*"]),
    package_data={"antnest": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=[
        "paramiko>=3.4",
        "fabric>=3.2",      # the project's SSH stack; the run path uses paramiko alone (cold start)
        "cloudpickle>=2.1",
        "PyYAML>=6.0",
        "tqdm>=4.60",
    ],
    extras_require={"test": ["pytest>=7", "pytest-mock>=3.10", "pytest-timeout>=2.1", "hypothesis>=6.0", "mypy>=1.0",
                             "invoke>=2.0,<3",  # test_anypython forwards it to 3.6+ hosts: 3.x needs 3.9+
                             "types-PyYAML", "ansible-core>=2.19; python_version >= '3.11'"]},
    entry_points={"console_scripts": ["antnest = antnest.cli:main"]},
)
