from account_ops.cli import main

raise SystemExit(main())
