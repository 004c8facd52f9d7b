"""The paper's claims at CPU size: procedural fill-circles and a tiny base that the production code trains on."""
