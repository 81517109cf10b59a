"""The Hydra configs shipped with dualprompt (a package, so that Hydra finds them when the
command runs from any folder)."""
