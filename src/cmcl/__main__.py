from cmcl.cli import main

raise SystemExit(main())
